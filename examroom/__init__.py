"""examroom: the exam-room edge agent and the site side that follows its rooms."""
__version__ = "0.1.0"
