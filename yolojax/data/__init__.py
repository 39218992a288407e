"""Datasets for yolojax: readers (Ultralytics YAML/YOLO txt, VisDrone, VOC, COCO, DOTA), checks, conversion,
a synthetic aerial dataset, Ultralytics-style augmentation and a static-shape batch loader."""
from yolojax.data.augment import AugmentConfig
from yolojax.data.check import check_dataset
from yolojax.data.convert import convert_dataset
from yolojax.data.loader import Loader
from yolojax.data.readers import (COCO80_NAMES, DOTA_NAMES, FORMATS, IGNORE_CLASS, VISDRONE_NAMES, VOC_NAMES,
                                  detect_format, load_dataset)
from yolojax.data.records import Dataset, Problem, Record
from yolojax.data.synth import make_synthetic

__all__ = ["AugmentConfig", "COCO80_NAMES", "DOTA_NAMES", "Dataset", "FORMATS", "IGNORE_CLASS", "Loader", "Problem",
           "Record", "VISDRONE_NAMES", "VOC_NAMES", "check_dataset", "convert_dataset", "detect_format",
           "load_dataset", "make_synthetic"]
