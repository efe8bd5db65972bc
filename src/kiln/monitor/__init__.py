"""The monitoring stage: reference profiles, prediction logs, drift, alerts and the dashboard.

A package carries the profile of its validation split (``reference_profile.json``); the server
logs what it answers and compares sliding windows of live traffic with that reference.
"""
