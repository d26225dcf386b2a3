"""A pycaffe script: define a net with NetSpec, train it with a Python loss, classify images.

Written against Caffe 1.0's pycaffe only (nothing dlsoft-specific), it runs unchanged
with dlsoft's `caffe` package. Run it from any folder; it writes its files there:

    python examples/pycaffe/train_digits.py
"""
import os
import sys

import numpy as np
from PIL import Image

import caffe
from caffe import layers as L, params as P
from caffe.proto import caffe_pb2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # where softmax_loss.py lives


def mlp(n, bottom):
    n.ip1 = L.InnerProduct(bottom, num_output=64, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.ip1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    return n.score


def train_net(source, batch_size):
    n = caffe.NetSpec()
    n.data, n.label = L.Data(source=source, backend=P.Data.LMDB, batch_size=batch_size, ntop=2,
                             transform_param=dict(scale=1. / 256))
    n.loss = L.Python(mlp(n, n.data), n.label, loss_weight=1,
                      python_param=dict(module='softmax_loss', layer='SoftmaxLoss'))
    return n.to_proto()


def deploy_net():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[10, 1, 28, 28]))
    n.prob = L.Softmax(mlp(n, n.data))
    return n.to_proto()


def main():
    caffe.set_mode_cpu()
    caffe.set_random_seed(1)
    with open('train.prototxt', 'w') as f:
        f.write(str(train_net('builtin:digits/train', 64)))
    with open('deploy.prototxt', 'w') as f:
        f.write(str(deploy_net()))
    solver_param = caffe_pb2.SolverParameter(train_net='train.prototxt', base_lr=0.05, momentum=0.9,
                                             weight_decay=5e-4, lr_policy='fixed', max_iter=200,
                                             display=100, snapshot_prefix='digits')
    with open('solver.prototxt', 'w') as f:
        f.write(str(solver_param))

    solver = caffe.SGDSolver('solver.prototxt')
    losses = []
    for _ in range(200):
        solver.step(1)
        losses.append(float(solver.net.blobs['loss'].data.flat[0]))
    print('loss: first 10 iterations %.3f, last 10 %.3f' % (np.mean(losses[:10]), np.mean(losses[-10:])))
    solver.net.save('digits.caffemodel')

    # Ten held-out digits as image files, as a user would have them.
    n = caffe.NetSpec()
    n.data, n.label = L.Data(source='builtin:digits/test', backend=P.Data.LMDB, batch_size=10, ntop=2)
    with open('images.prototxt', 'w') as f:
        f.write(str(n.to_proto()))
    images = caffe.Net('images.prototxt', caffe.TEST)
    images.forward()
    files, labels = [], images.blobs['label'].data.astype(int)
    for i, pixels in enumerate(images.blobs['data'].data):
        files.append('digit_%d.png' % i)
        Image.fromarray(pixels[0].astype(np.uint8)).save(files[-1])

    net = caffe.Net('deploy.prototxt', 'digits.caffemodel', caffe.TEST)
    transformer = caffe.io.Transformer({'data': net.blobs['data'].data.shape})
    transformer.set_transpose('data', (2, 0, 1))  # H x W x 1 -> 1 x H x W
    transformer.set_raw_scale('data', 255)  # load_image gives [0, 1]; the net saw pixels...
    transformer.set_input_scale('data', 1. / 256)  # ...times 1/256, as in training
    for i, name in enumerate(files):
        net.blobs['data'].data[i] = transformer.preprocess('data', caffe.io.load_image(name, color=False))
    predicted = net.forward()['prob'].argmax(axis=1)
    print('predicted %s' % ' '.join(map(str, predicted)))
    print('labels    %s' % ' '.join(map(str, labels)))
    print('accuracy %.1f' % (predicted == labels).mean())


if __name__ == '__main__':
    main()
