"""Training, evaluation and data tools for VLTSeg checkpoints. Depends on the ``vltseg_ros`` core, never the reverse.

Its ``vltseg`` subcommands (``synth``, ``train``, ``eval``) are registered through the ``vltseg.commands`` entry
point group, so the core command line never imports this package.
"""
