"""Child networks and supernets (convolutional and recurrent cells); see the CIFAR-10 and PTB issues."""
