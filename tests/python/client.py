"""A client of the HyperExport API in another language: stubs generated from proto/ here, then
a job submitted and watched to success against a running coordinator and agent, errors, paging.

Usage: python client.py HOST:PORT PROTO_DIR OUT_DIR TARGET
"""
import sys

from grpc_tools import protoc


def main() -> None:
    addr, proto_dir, out, target = sys.argv[1:5]
    protos = ["hyperexport/v1/export.proto", "hyperexport/v1/agent.proto"]
    status = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}", *protos])
    if status != 0:
        sys.exit(f"protoc failed with {status}")
    sys.path.insert(0, out)
    import grpc
    from hyperexport.v1 import export_pb2 as pb
    from hyperexport.v1 import export_pb2_grpc as rpc

    stub = rpc.ExportServiceStub(grpc.insecure_channel(addr))
    job_id = stub.Submit(pb.SubmitRequest(vms=["py-vm-1", "py-vm-2"], target=target, priority=3)).job_id
    seen = []
    for job in stub.Watch(pb.WatchJobRequest(job_id=job_id), timeout=120):
        seen.append(job.state)
    assert seen[-1] == pb.JOB_STATE_SUCCEEDED, seen
    job = stub.Get(pb.GetJobRequest(job_id=job_id))
    assert [t.vm for t in job.tasks] == ["py-vm-1", "py-vm-2"], job
    assert job.priority == 3 and job.target == target, job
    assert all(t.point and t.bytes_done == t.bytes_total > 0 for t in job.tasks), job
    try:
        stub.Submit(pb.SubmitRequest(vms=[], target="file:///srv/py"))
        sys.exit("an empty submission was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and "vms is empty" in e.details(), e
    try:
        stub.Submit(pb.SubmitRequest(vms=["nowhere"], target=target))
        sys.exit("a VM no agent has was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND and "no live agent" in e.details(), e
    other = stub.Submit(pb.SubmitRequest(vms=["py-vm-1"], target=target)).job_id
    page = stub.List(pb.ListJobsRequest(page_size=1))
    assert [j.id for j in page.jobs] == [other] and page.next_page_token, page
    rest = stub.List(pb.ListJobsRequest(page_size=1, page_token=page.next_page_token))
    assert [j.id for j in rest.jobs] == [job_id] and not rest.next_page_token, rest
    print(f"python client ok: job {job_id} states {seen}")


if __name__ == "__main__":
    main()
