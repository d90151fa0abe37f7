"""Deciding what annotators see and reading their answers back: the routing policy and its strategies, the review
caps, and the Label Studio task format (labelling config, pre-annotations, parsing annotations into values).

Pure: no network and no database; the daemon's review worker and routing hook do the I/O.
"""
