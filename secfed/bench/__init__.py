"""``secfed bench``: crypto overhead of every registered protocol, peers side by side.

:func:`~secfed.bench.measure.measure_point` times one sweep point with a stage-aware ferry
loop; :mod:`~secfed.bench.baselines` times the peers (naive ``phe``, bare TenSEAL, Flower's
SecAgg+ masking); :mod:`~secfed.bench.report` writes tables, JSON, CSV and plots;
:mod:`~secfed.bench.e2e` runs the default job once per protocol.
"""

from .measure import BenchRecord, measure_point
from .workload import Point, parse_protocol_options, sweep_points

__all__ = ["BenchRecord", "Point", "measure_point", "parse_protocol_options", "sweep_points"]
