"""Condition-aware scoring: few-shot reference banks (banks.py), cold/warm gates (gates.py) and their wiring
into a method (aware.py)."""
