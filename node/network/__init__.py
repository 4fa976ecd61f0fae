"""The DICOM network and the node's HTTP peers: the listener that receives studies
(with its access policy, limits and TLS), the client that echoes and sends to peers
(C-ECHO, C-STORE), the STOW-RS and webhook clients."""
