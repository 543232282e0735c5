"""A client of the HyperExport API in another language: stubs generated from proto/ here, then
Submit, Watch and Cancel of a job against a running coordinator.

Usage: python client.py HOST:PORT PROTO_DIR OUT_DIR
"""
import sys
import threading

from grpc_tools import protoc


def main() -> None:
    addr, proto_dir, out = sys.argv[1:4]
    status = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", "hyperexport/v1/export.proto"])
    if status != 0:
        sys.exit(f"protoc failed with {status}")
    sys.path.insert(0, out)
    import grpc
    from hyperexport.v1 import export_pb2 as pb
    from hyperexport.v1 import export_pb2_grpc as rpc

    stub = rpc.ExportServiceStub(grpc.insecure_channel(addr))
    job_id = stub.Submit(pb.SubmitRequest(vms=["py-vm-1", "py-vm-2"], target="file:///srv/py", priority=3)).job_id
    seen = []
    first = threading.Event()

    def watch() -> None:
        for job in stub.Watch(pb.WatchJobRequest(job_id=job_id)):
            seen.append(job.state)
            first.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    if not first.wait(10):
        sys.exit("no first update from Watch")
    job = stub.Get(pb.GetJobRequest(job_id=job_id))
    assert [t.vm for t in job.tasks] == ["py-vm-1", "py-vm-2"], job
    assert job.priority == 3 and job.target == "file:///srv/py", job
    stub.Cancel(pb.CancelJobRequest(job_id=job_id))
    watcher.join(10)
    assert not watcher.is_alive(), "Watch did not end at the final state"
    assert seen[0] == pb.JOB_STATE_PENDING and seen[-1] == pb.JOB_STATE_CANCELLED, seen
    try:
        stub.Submit(pb.SubmitRequest(vms=[], target="file:///srv/py"))
        sys.exit("an empty submission was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "vms is empty" in e.details(), e
    other = stub.Submit(pb.SubmitRequest(vms=["py-vm-3"], target="file:///srv/py")).job_id
    page = stub.List(pb.ListJobsRequest(page_size=1))
    assert [j.id for j in page.jobs] == [other] and page.next_page_token, page
    rest = stub.List(pb.ListJobsRequest(page_size=1, page_token=page.next_page_token))
    assert [j.id for j in rest.jobs] == [job_id] and not rest.next_page_token, rest
    print(f"python client ok: job {job_id} states {seen}")


if __name__ == "__main__":
    main()
