from medxgan.models.classifier import BinaryClassifier, build_classifier, last_conv_layer
from medxgan.models.gan import Discriminator, Generator, build_discriminator, build_generator

__all__ = [
    "BinaryClassifier",
    "build_classifier",
    "last_conv_layer",
    "Generator",
    "Discriminator",
    "build_generator",
    "build_discriminator",
]
