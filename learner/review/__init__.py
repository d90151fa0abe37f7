"""Deciding what annotators see and reading their answers back. Pure: no network and no database; the daemon's
review worker (`daemon/review/`) and routing hook (`daemon/routing.py`) do the I/O.

- `policy.py`: the routing policy and its strategies (which products go to annotators, in which order);
- `uncertainty.py`: uncertainty measures (least confidence, margin, entropy);
- `caps.py`: `ReviewCaps`, the hourly and daily budget;
- `routing.py`: `ReviewRouting`, the enrichment daemon's hook that builds the outbox payload;
- `tasks.py`: the Label Studio task format (labelling config, pre-annotations, boxes, parsing annotations).
"""
