"""Features on disk, the tf.data pipeline, extraction and the demo dataset."""
