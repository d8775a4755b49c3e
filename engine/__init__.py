"""Training and evaluation engines: the loops behind train_ssd_network.py and eval_ssd_network.py."""
