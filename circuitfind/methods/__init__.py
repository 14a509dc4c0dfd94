"""Edge-scoring methods. Each returns scores [sender, receiver] with the sign convention
score(edge) = metric(edge ablated) - metric(clean) (attribution methods approximate it)."""

from circuitfind.methods.acdc import acdc
from circuitfind.methods.eap import eap_scores
from circuitfind.methods.exact import exact_scores
from circuitfind.methods.node import node_scores

__all__ = ["acdc", "eap_scores", "exact_scores", "node_scores"]
