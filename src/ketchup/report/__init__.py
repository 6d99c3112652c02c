"""The report layer: from scored runs to the study's tables and figures.

results  runs collected into cells, paired comparisons across seeds
tables   the study's markdown and CSV tables
figures  the study's figures
studies  a study's resolved config, the index of studies, the systems it measures
"""
