"""`make bench`: the benchmarks of issue 6 (1-5) and of issue 13 (6, host webhooks), each beside its
reference measured in the same run.

Every benchmark starts its own stack on loopback (an embedded Postgres in a temporary folder,
the Calendly sandbox, N `calendly-connect serve --fd` processes on one port, a socket each),
repeats short fixed-duration runs, and reports medians. Correctness checks (the database holds
exactly what the deliveries said; no stream got another user's event) turn a run into a failure
whatever its speed. `python -m benchmarks --help` lists the knobs.
"""
