"""Watermarks in a federated job: embedding during training, verification, attacks, CLI.

Modules: ``plugin`` (the training plugin that embeds owners' keys), ``triggers`` (black-box
trigger rehearsal), ``verify`` (reading an adapter or merged model and testing keys),
``attacks`` (removal attacks and their table), ``cli`` (``secfed watermark ...``). The key
format and statistics live in :mod:`crypto.watermark`.
"""
