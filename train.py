"""Train LeNet-5 as the composed Hydra config says (the config groups in src/lenet/conf/).

python train.py                               # LeNet-5 on MNIST, 10 epochs
python train.py optimizer=adam pooling=avg    # choose options of the config groups
python train.py -m pooling=avg,max seed=0,1,2 # a sweep: one job per combination
"""

from lenet.cli import run  # first: it records Ctrl-C and SIGTERM from here on

if __name__ == "__main__":
    run()
