"""Does LongAct's premise hold on a model? Paired-length gradient attribution of a mask (``docs/premise.md``).

``python -m longact_pl.premise model=... data=... masking=...`` (``conf/premise.yaml``): held-out task items
rendered at a short and a long length with the same needles, question and answer; M1 (gradient share in the
mask's rows), M2 (first-order effect of a masked update), M3 (the real step), against random and inverse
masks, with paired bootstrap intervals, a report and a decision line.
"""
