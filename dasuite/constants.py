"""Values every layer shares: the ignore label and the ImageNet statistics images are normalised with."""

IGNORE_INDEX = 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
