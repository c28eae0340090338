"""What runs mean together. One design: run records (records: RunRecord, the one reader and writer
of a results JSON), comparisons (compare: which numbers count, the pairing, the interval, Holm, the
matched reading, the baseline; stats: the t and Welch intervals, Holm), and the readings built on
them: a sweep's (sweeps), a study's verdict from its spec (study), the frontier over worlds
(frontier), the matched reading per seed (matched), the synth mechanism (mechanism). Then how they
read: number formats (formatting), runs loaded and their text tables (report), notes.txt (notes).
Figures are plot.py's; command lines are study.py's and sweep.py's."""
