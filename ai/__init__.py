"""AI models, series-to-volume loading, inference workers and result encoders.

Empty until the inference work lands; the package exists so that the layout,
packaging and imports are settled from the start.
"""
