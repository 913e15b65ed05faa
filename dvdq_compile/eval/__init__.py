"""Quality evaluation: video metrics and the ablation harness behind ``dvdq eval``."""
