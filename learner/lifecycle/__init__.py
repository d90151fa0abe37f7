"""Models over time: the registry of versions and aliases (`registry`), one retraining run from human corrections
to a promoted (or rejected) challenger (`retrain`), and the schedule that decides when a run happens (`schedule`).

Must not: read configuration (the daemon's `shelfsight learn` turns settings into these modules' configs).
"""
