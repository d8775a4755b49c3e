"""The command-line layer shared by every script: flag groups and the entry wrapper.

Scripts define their flags with :mod:`cli.flags` groups, turn them into library arguments
(:func:`cli.flags.config_from_flags`) and start with :func:`cli.app.run`, which gives every
script the same behaviour: ``--help`` exits 0, a usage error prints one line and exits 2, a
data error prints one line naming the file and exits 1, never a traceback.
Library packages never import this one.
"""
