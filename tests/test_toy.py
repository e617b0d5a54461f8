"""The toy network of Figure 2 against z+ numbers computed by hand.

Input (blue, orange) = (10, 1), weights 1.0 within a class and 0.1 across:
  hidden  h_circle = 10 + 0.1*1 = 10.1,  h_square = 0.1*10 + 1 = 2.0
  output  circle = 10.1 + 0.1*2.0 = 10.3, square = 0.1*10.1 + 2.0 = 3.01
Explaining *square* (R = (0, 3.01)):
  R_hidden = (0.1*10.1, 1.0*2.0) = (1.01, 2.0)
  R_blue   = 10/10.1 * 1.01 + (0.1*10)/2.0 * 2.0 = 1.0 + 1.0 = 2.0
  R_orange = 0.1/10.1 * 1.01 + 1/2.0 * 2.0     = 0.01 + 1.0 = 1.01
Explaining *circle* (R = (10.3, 0)):
  R_hidden = (10.1, 0.2);  R_blue = 10 + 0.1 = 10.1;  R_orange = 0.1 + 0.1 = 0.2
"""
import numpy as np
import pytest

from sepdtd import toy


def test_weights_are_those_of_figure_2():
    net = toy.paper_network()
    assert set(np.unique(net.w_hidden)) == {0.1, 1.0}
    np.testing.assert_array_equal(net.w_hidden, [[1.0, 0.1], [0.1, 1.0]])
    np.testing.assert_array_equal(net.w_out, [[1.0, 0.1], [0.1, 1.0]])


def test_forward_by_hand():
    hidden, output = toy.paper_network().forward(toy.EXAMPLE_INPUT)
    np.testing.assert_allclose(hidden, [10.1, 2.0])
    np.testing.assert_allclose(output, [10.3, 3.01])


def test_square_explanation_by_hand_is_dominated_by_the_circle():
    e = toy.explain(toy.paper_network(), toy.EXAMPLE_INPUT, "square")
    np.testing.assert_allclose(e.r_output, [0.0, 3.01])
    np.testing.assert_allclose(e.r_hidden, [1.01, 2.0])
    np.testing.assert_allclose(e.r_input, [2.0, 1.01])
    assert e.input_share("blue") == pytest.approx(2.0 / 3.01)
    assert e.input_share("blue") > 0.5  # the diffusion of Section 3
    assert e.r_input.sum() == pytest.approx(e.total)


def test_circle_explanation_by_hand():
    e = toy.explain(toy.paper_network(), toy.EXAMPLE_INPUT, "circle")
    np.testing.assert_allclose(e.r_hidden, [10.1, 0.2])
    np.testing.assert_allclose(e.r_input, [10.1, 0.2])
    assert e.total == pytest.approx(10.3)


def test_separated_network_does_not_diffuse():
    e = toy.explain(toy.separated_network(), toy.EXAMPLE_INPUT, "square")
    np.testing.assert_allclose(e.r_input, [0.0, 1.0])


def test_zplus_ignores_negative_weights_and_conserves():
    r = toy.zplus(np.array([1.0, 2.0]), np.array([[1.0, -1.0], [2.0, 1.0]]), np.array([3.0, 4.0]))
    # output 0: only input 0 has a positive contribution -> all 3 to it;
    # output 1: contributions 2 and 2 -> 2 each
    np.testing.assert_allclose(r, [5.0, 2.0])


def test_zplus_zero_denominator_passes_nothing():
    r = toy.zplus(np.zeros(2), np.ones((1, 2)), np.array([1.0]))
    np.testing.assert_array_equal(r, [0.0, 0.0])


@pytest.mark.parametrize("x", [[1.0], [1.0, -1.0]])
def test_bad_inputs(x):
    with pytest.raises(ValueError):
        toy.explain(toy.paper_network(), np.array(x), "square")


def test_bad_class():
    with pytest.raises(ValueError, match="circle"):
        toy.explain(toy.paper_network(), toy.EXAMPLE_INPUT, "triangle")
