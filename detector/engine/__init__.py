"""The training engine: config validation (``config``), the loop (``loop``), one run from a
config, built then driven (``run``), COCO evaluation (``evaluator``), checkpoint state and resume
(``state``), optimizer and schedule (``optim``), mixed precision (``precision``), process groups
(``distributed``), TensorBoard and metrics files (``events``), drawing (``visualize``).
``tools/train.py``, ``tools/evaluate.py`` and ``tools/infer.py`` are thin Hydra entry points over
these modules.
"""
