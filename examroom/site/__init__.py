"""The site side (``examroom-site``): the aggregator that follows every room of an exam
site, its live board, joint testing, command push and the provincial link. It shares the
contract (topics, vocabulary, schemas) with the room agent and nothing else."""
