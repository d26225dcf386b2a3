"""LSTM, RNN and LSTMUnit: gradients through time, PyTorch / numpy references, Caffe's blobs."""
from __future__ import annotations

import numpy as np
import pytest

from dlsoft.errors import NetDefinitionError
from gradcheck import check_gradient, compare_devices, covers, run_layer

T, N, D, H, S = 3, 2, 3, 4, 2
FILLERS = 'weight_filler { type: "uniform" min: -0.5 max: 0.5 } bias_filler { type: "uniform" min: -0.5 max: 0.5 }'


def recurrent(kind, hidden=H, expose=False):
    return (f'type: "{kind}" recurrent_param {{ num_output: {hidden} {FILLERS} '
            f'expose_hidden: {"true" if expose else "false"} }}')


def inputs(seed=0, static=False, resets=True):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (T, N, D)).astype(np.float32)
    cont = np.ones((T, N), np.float32)
    cont[0] = 0
    if resets:
        cont[2, 1] = 0  # the second stream starts a new sequence at t = 2
    bottoms = [x, cont]
    if static:
        bottoms.append(rng.uniform(-1, 1, (N, S)).astype(np.float32))
    return bottoms


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def numpy_lstm(x, cont, w_x, b, w_h, h, c, static_term=0.0):
    hs, cs = [], []
    hidden = w_h.shape[1]
    for t in range(x.shape[0]):
        z = x[t] @ w_x.T + b + static_term + (cont[t, :, None] * h) @ w_h.T
        i, f, o = (sigmoid(z[:, k * hidden:(k + 1) * hidden]) for k in range(3))
        g = np.tanh(z[:, 3 * hidden:])
        c = cont[t, :, None] * f * c + i * g
        h = o * np.tanh(c)
        hs.append(h)
        cs.append(c)
    return np.stack(hs), np.stack(cs)


# ---- blobs: Caffe's names, order and shapes -------------------------------------------

def test_lstm_blobs_match_caffe():
    layer, _, tops = run_layer(recurrent("LSTM"), inputs(static=True))
    assert [b.shape for b in layer.blobs] == [(4 * H, D), (4 * H,), (4 * H, S), (4 * H, H)]
    assert tops[0].shape == (T, N, H)


def test_rnn_blobs_match_caffe():
    layer, _, tops = run_layer(recurrent("RNN"), inputs(static=True))
    assert [b.shape for b in layer.blobs] == [(H, D), (H,), (H, S), (H, H), (H, H), (H,)]
    assert tops[0].shape == (T, N, H)


def test_cont_shape_is_checked():
    x, cont = inputs()
    with pytest.raises(NetDefinitionError, match="cont"):
        run_layer(recurrent("LSTM"), [x, cont[:, :1]])


# ---- references -----------------------------------------------------------------------

def test_lstm_matches_numpy_with_resets_and_static_input():
    bottoms = inputs(static=True)
    layer, _, tops = run_layer(recurrent("LSTM"), bottoms)
    w_x, b, w_s, w_h = (blob.data for blob in layer.blobs)
    zeros = np.zeros((N, H), np.float32)
    h, _ = numpy_lstm(bottoms[0], bottoms[1], w_x, b, w_h, zeros, zeros, bottoms[2] @ w_s.T)
    np.testing.assert_allclose(tops[0].data, h, rtol=1e-5, atol=1e-6)


@covers("LSTM", "reference")
def test_lstm_matches_torch_forward_and_backward():
    torch = pytest.importorskip("torch")
    bottoms = inputs(resets=False)  # torch has no resets: cont is 1 except at t = 0
    layer, bottom_blobs, tops = run_layer(recurrent("LSTM"), bottoms)
    w_x, b, w_h = (blob.data for blob in layer.blobs)

    def to_torch_gates(w):  # Caffe's [i, f, o, g] -> torch's [i, f, g, o]
        i, f, o, g = np.split(w, 4, axis=0)
        return torch.tensor(np.concatenate([i, f, g, o]))

    lstm = torch.nn.LSTM(D, H)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(to_torch_gates(w_x))
        lstm.weight_hh_l0.copy_(to_torch_gates(w_h))
        lstm.bias_ih_l0.copy_(to_torch_gates(b))
        lstm.bias_hh_l0.zero_()
    x = torch.tensor(bottoms[0], requires_grad=True)
    out, _ = lstm(x)
    np.testing.assert_allclose(tops[0].data, out.detach().numpy(), rtol=1e-4, atol=1e-5)

    dtop = np.random.default_rng(3).uniform(-1, 1, tops[0].shape).astype(np.float32)
    out.backward(torch.tensor(dtop))
    tops[0].diff[...] = dtop
    for blob in layer.blobs:
        blob.diff[...] = 0
    layer.backward(tops, [True, False], bottom_blobs)
    np.testing.assert_allclose(bottom_blobs[0].diff, x.grad.numpy(), rtol=1e-4, atol=1e-5)
    grads = [to_torch_gates(blob.diff).numpy() for blob in layer.blobs]
    np.testing.assert_allclose(grads[0], lstm.weight_ih_l0.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads[1], lstm.bias_ih_l0.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads[2], lstm.weight_hh_l0.grad.numpy(), rtol=1e-4, atol=1e-5)


@covers("RNN", "reference")
def test_rnn_matches_closed_form_loop():
    bottoms = inputs(static=True)
    layer, _, tops = run_layer(recurrent("RNN"), bottoms)
    w_xh, b_h, w_s, w_hh, w_ho, b_o = (blob.data for blob in layer.blobs)
    x, cont, x_static = bottoms
    h = np.zeros((N, H), np.float32)
    expected = []
    for t in range(T):
        h = np.tanh(w_hh @ (cont[t, :, None] * h).T + (w_xh @ x[t].T) + b_h[:, None] + (w_s @ x_static.T)).T
        expected.append(np.tanh(h @ w_ho.T + b_o))
    np.testing.assert_allclose(tops[0].data, np.stack(expected), rtol=1e-5, atol=1e-6)


def test_state_carries_over_between_calls_without_expose_hidden():
    """Caffe's behaviour: a second forward starts from the first one's last state."""
    x, cont = inputs(resets=False)
    cont[0] = 1  # continue the sequence across calls
    layer, bottom_blobs, tops = run_layer(recurrent("LSTM"), [x, cont])
    w_x, b, w_h = (blob.data for blob in layer.blobs)
    zeros = np.zeros((N, H), np.float32)
    h1, c1 = numpy_lstm(x, cont, w_x, b, w_h, zeros, zeros)
    layer.forward(bottom_blobs, tops)
    h2, _ = numpy_lstm(x, cont, w_x, b, w_h, h1[-1], c1[-1])
    np.testing.assert_allclose(tops[0].data, h2, rtol=1e-5, atol=1e-6)


def test_expose_hidden_uses_and_returns_states():
    rng = np.random.default_rng(5)
    x, cont = inputs(resets=False)
    cont[0] = 1
    h0, c0 = (rng.uniform(-1, 1, (1, N, H)).astype(np.float32) for _ in range(2))
    layer, _, tops = run_layer(recurrent("LSTM", expose=True), [x, cont, h0, c0], num_tops=3)
    w_x, b, w_h = (blob.data for blob in layer.blobs)
    h, c = numpy_lstm(x, cont, w_x, b, w_h, h0[0], c0[0])
    np.testing.assert_allclose(tops[0].data, h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tops[1].data[0], h[-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tops[2].data[0], c[-1], rtol=1e-5, atol=1e-6)


@covers("LSTMUnit", "reference")
def test_lstm_unit_matches_closed_form():
    rng = np.random.default_rng(2)
    c_prev = rng.uniform(-1, 1, (1, N, H)).astype(np.float32)
    gates = rng.uniform(-2, 2, (1, N, 4 * H)).astype(np.float32)
    cont = np.array([[1, 0]], np.float32)
    _, _, (c, h) = run_layer('type: "LSTMUnit"', [c_prev, gates, cont], num_tops=2)
    i, f, o = (sigmoid(gates[0, :, k * H:(k + 1) * H]) for k in range(3))
    g = np.tanh(gates[0, :, 3 * H:])
    c_ref = cont[0, :, None] * f * c_prev[0] + i * g
    np.testing.assert_allclose(c.data[0], c_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h.data[0], o * np.tanh(c_ref), rtol=1e-5, atol=1e-6)


# ---- gradients ------------------------------------------------------------------------

@covers("LSTM", "gradient")
@covers("RNN", "gradient")
@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_gradient_with_resets(kind):
    check_gradient(recurrent(kind), inputs(), check_bottoms=[0])


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_gradient_with_static_input(kind):
    check_gradient(recurrent(kind), inputs(static=True), check_bottoms=[0, 2])


@pytest.mark.parametrize("kind,states", [("LSTM", 2), ("RNN", 1)])
def test_gradient_expose_hidden(kind, states):
    rng = np.random.default_rng(7)
    x, cont = inputs()
    cont[0] = 1  # let the initial state matter
    hidden = [rng.uniform(-1, 1, (1, N, H)).astype(np.float32) for _ in range(states)]
    check_gradient(recurrent(kind, expose=True), [x, cont, *hidden], num_tops=1 + states,
                   check_bottoms=[0] + [2 + k for k in range(states)])


@covers("LSTMUnit", "gradient")
def test_lstm_unit_gradient():
    rng = np.random.default_rng(4)
    bottoms = [rng.uniform(-1, 1, (1, N, H)), rng.uniform(-2, 2, (1, N, 4 * H)), np.array([[1, 0]])]
    check_gradient('type: "LSTMUnit"', bottoms, num_tops=2, check_bottoms=[0, 1])


@covers("LSTM", "gpu")
@covers("RNN", "gpu")
@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_gpu_matches_cpu(kind):
    compare_devices(recurrent(kind), inputs(static=True))


@covers("LSTMUnit", "gpu")
@pytest.mark.gpu
def test_lstm_unit_gpu_matches_cpu():
    rng = np.random.default_rng(4)
    compare_devices('type: "LSTMUnit"', [rng.uniform(-1, 1, (1, N, H)), rng.uniform(-2, 2, (1, N, 4 * H)),
                                         np.array([[1, 0]])], num_tops=2)
