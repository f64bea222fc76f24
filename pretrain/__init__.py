"""Stage one: self-supervised pretraining of ResNet encoders."""
