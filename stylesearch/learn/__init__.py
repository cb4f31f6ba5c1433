"""Learning a personal metric: the judgments log, labelling sessions and sampling, the metric
kinds' interface, fitting on arrays, and training a dataset's metric.
"""
