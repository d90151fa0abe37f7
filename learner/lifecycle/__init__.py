"""Models over time: the registry of versions and aliases (`registry`), the pinned holdout (`holdout`), training
data from the labelled set and human corrections (`corrections`), one retraining run to a promoted (or rejected)
challenger (`retrain`, its error type in `errors`), and the schedule that decides when a run happens (`schedule`).

Must not: read configuration (the daemon's `shelfsight learn` turns settings into these modules' configs).
"""
