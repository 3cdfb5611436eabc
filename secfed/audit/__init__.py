"""``secfed privacy audit``: an empirical lower bound on a job's epsilon from one run.

Canaries (random-label examples for sample-level DP, canary clients with crafted updates for
user-level DP) are each included with probability 1/2 from :mod:`secrets`; the job runs once
with them; membership guesses from the final model become a lower bound on epsilon at 95%
confidence (:mod:`privacy.audit`, Steinke, Nasr and Jagielski 2023). The runner
(:mod:`.runner`, which needs torch) is imported by the command when it runs, so
``secfed --help`` stays fast.
"""
