"""The training engine: config validation (``config``), the loop (``trainer``), one run from a
config (``training``), COCO evaluation (``evaluator``), checkpoint state and resume
(``training_state``), optimizer and schedule (``optim``), mixed precision (``precision``),
process groups (``distributed``), TensorBoard and metrics files (``summary``), drawing
(``visualize``). ``tools/train.py``, ``tools/evaluate.py`` and ``tools/infer.py`` are thin
Hydra entry points over these modules.
"""
