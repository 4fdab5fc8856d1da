"""The Faust app: topics and agents that decide what happens to each order."""
