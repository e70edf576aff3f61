"""CloudDetect: YOLOv3-tiny object detection as a Flask web service."""
