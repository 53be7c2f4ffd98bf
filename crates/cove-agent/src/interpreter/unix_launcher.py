# Starts an ipykernel whose every ZeroMQ socket is a Unix socket (Cove, gVisor sandboxes):
# the connection file names `ipc` sockets, and the one socket ipykernel binds to a TCP port
# of its own choosing (the pipe that carries the output of forked subprocesses to IOPub) is
# bound beside them instead, at the path COVE_KERNEL_PIPE names. A sandbox whose kernels
# listen on no TCP port can be checkpointed with them.
#
# An ipykernel without these methods keeps its TCP pipe; the sandbox then cannot be paused
# with memory, and says so (the port is named), as with any TCP listener.
import os
import sys

if sys.path and sys.path[0] == "":
    del sys.path[0]

_pipe = os.environ.pop("COVE_KERNEL_PIPE", None)

try:
    import zmq
    from ipykernel import iostream
    from zmq.eventloop.zmqstream import ZMQStream
except ImportError:
    _pipe = None

if _pipe and all(
    hasattr(iostream.IOPubThread, name)
    for name in ("_setup_pipe_in", "_setup_pipe_out", "_handle_pipe_msg")
):

    def _setup_pipe_in(self):
        self._pipe_uuid = os.urandom(16)
        pipe_in = self.socket.context.socket(zmq.PULL)
        pipe_in.linger = 0
        pipe_in.bind("ipc://" + _pipe)
        self._pipe_port = 0
        self._pipe_in = ZMQStream(pipe_in, self.io_loop)
        self._pipe_in.on_recv(self._handle_pipe_msg)

    def _setup_pipe_out(self):
        # A forked child: a context of its own, as ipykernel does.
        ctx = zmq.Context()
        pipe_out = ctx.socket(zmq.PUSH)
        pipe_out.linger = 3000
        pipe_out.connect("ipc://" + _pipe)
        return ctx, pipe_out

    iostream.IOPubThread._setup_pipe_in = _setup_pipe_in
    iostream.IOPubThread._setup_pipe_out = _setup_pipe_out

from ipykernel import kernelapp

kernelapp.launch_new_instance()
