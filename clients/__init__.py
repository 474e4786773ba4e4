"""Reference clients of the worldsim daemon; they speak only the protocol (through ``worldsim.client``)."""
