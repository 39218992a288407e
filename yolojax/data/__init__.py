"""Datasets for yolojax: readers (YOLO/Ultralytics YAML, VisDrone, VOC, COCO, DOTA), checks, conversion,
a synthetic aerial dataset, Ultralytics-style augmentation and a static-shape batch loader."""
from yolojax.data.records import Dataset, Problem, Record
from yolojax.data.readers import (COCO80_NAMES, DOTA_NAMES, FORMATS, VISDRONE_NAMES, VOC_NAMES, detect_format,
                                  load_dataset)

__all__ = ["Dataset", "Problem", "Record", "load_dataset", "detect_format", "FORMATS", "VISDRONE_NAMES",
           "DOTA_NAMES", "VOC_NAMES", "COCO80_NAMES"]
