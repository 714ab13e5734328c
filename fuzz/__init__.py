"""Coverage-guided fuzzing of every imaguard parser of outside input (docs/reliability.md).

``fuzz.targets`` holds one check function per parser; ``python -m fuzz.run NAME`` fuzzes one
with atheris, ``python -m fuzz.campaign`` (``make fuzz``) runs them all and reports.
This package imports nothing from imaguard itself, so the runner can instrument imaguard
as it is first imported.
"""
