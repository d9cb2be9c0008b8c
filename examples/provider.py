#!/usr/bin/env python3
"""An epi provider process in Python, standard library only: serves the tasks `whoami` and
`echo` on SOCKET_DIR/TASK/PRIORITY-NAME.sock (see plugins/provider/PROTOCOL.md).

usage: provider.py SOCKET_DIR NAME [PRIORITY]"""
import json, os, signal, socket, struct, sys, threading

MAX_FRAME = 16 << 20

def read_frame(conn):
    head = conn.recv(4, socket.MSG_WAITALL)
    if len(head) < 4:
        return None
    size = struct.unpack(">I", head)[0]
    if size > MAX_FRAME:
        return None
    body = conn.recv(size, socket.MSG_WAITALL) if size else b""
    return json.loads(body) if len(body) == size else None

def write_frame(conn, value):
    body = json.dumps(value).encode()
    conn.sendall(struct.pack(">I", len(body)) + body)

def serve(conn, task, handler):
    with conn:
        while (request := read_frame(conn)) is not None:
            if not isinstance(request, dict):
                write_frame(conn, {"id": "", "error": "the request is not a JSON object"})
                continue
            missing = [k for k in ("id", "task", "response_hook") if not request.get(k)]
            if missing or request["task"] != task:
                write_frame(conn, {"id": request.get("id", ""), "error": f"bad request: {missing or request['task']}"})
                continue
            write_frame(conn, {"id": request["id"]})  # the acknowledgement
            try:
                response = {"id": request["id"], "result": handler(request.get("args"))}
            except Exception as err:
                response = {"id": request["id"], "error": str(err)}
            try:
                with socket.socket(socket.AF_UNIX) as hook:
                    hook.connect(request["response_hook"].removeprefix("unix://"))
                    write_frame(hook, response)
            except (OSError, TypeError, ValueError) as err:
                print(f"cannot deliver {request['id']}: {err}", file=sys.stderr)

def accept(listener, task, handler):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, task, handler), daemon=True).start()

def main():
    socket_dir, name = sys.argv[1], sys.argv[2]
    priority = sys.argv[3] if len(sys.argv) > 3 else "50"
    tasks = {"whoami": lambda args: name, "echo": lambda args: args}
    paths = []
    for task, handler in tasks.items():
        os.makedirs(os.path.join(socket_dir, task), mode=0o700, exist_ok=True)
        path = os.path.join(socket_dir, task, f"{priority}-{name}.sock")
        if os.path.exists(path):
            os.unlink(path)
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        listener.listen()
        paths.append(path)
        threading.Thread(target=accept, args=(listener, task, handler), daemon=True).start()
    print("serving", " ".join(paths), flush=True)
    signal.sigwait([signal.SIGTERM, signal.SIGINT])
    for path in paths:
        os.unlink(path)

if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGINT])
    main()
