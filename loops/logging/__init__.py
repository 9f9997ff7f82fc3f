"""What `self.log` records (results.py) and where it goes after each step and epoch (metrics.py)."""
