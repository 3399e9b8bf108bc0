"""mmser: speech + text emotion recognition, five papers on one honest protocol.

The package follows the pipeline: `corpus` (corpus -> manifest, folds), `encode`
(transcribe -> features), `training` (one task, fit, the fold loop), `models` (each
paper's modules and losses), `papers` (each paper's experiment), `report` (metrics,
tables, figures, the cross-paper report).
"""

from mmser.progress import quiet_report

__version__ = "0.1.0"

quiet_report()  # in a pipeline-executed notebook: warnings and logs to the stage's log
