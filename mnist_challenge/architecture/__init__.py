"""What a network is: ``ArchSpec`` (a GAP-headed CNN as JSON, ``spec``), the model built from it (``model``),
the inspector of any ``nn.Module`` (receptive field, parameters, MACs; ``inspector``) and the loading of a
user's model from a file or torchvision (``loading``). No training here."""
