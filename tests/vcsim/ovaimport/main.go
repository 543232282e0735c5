// ovaimport for the tests: imports an OVA into a vSphere server (the simulator) the way vSphere
// clients do, with govmomi's library (Debian golang-github-vmware-govmomi-dev): OvfManager's
// CreateImportSpec, ResourcePool.ImportVApp, the disks uploaded through the NFC lease; then
// prints what the server made of it: "imported NAME cpus N memory_mb M disks D".
//
// Usage: ovaimport -url https://user:pass@HOST:PORT/sdk -name NAME FILE.ova
package main

import (
	"archive/tar"
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"strings"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/ovf"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

func fail(what string, err error) {
	fmt.Fprintf(os.Stderr, "ovaimport: %s: %v\n", what, err)
	os.Exit(1)
}

// member returns the contents of the OVA member called name.
func member(ova, name string) ([]byte, error) {
	f, err := os.Open(ova)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := tar.NewReader(f)
	for {
		h, err := r.Next()
		if err != nil {
			return nil, fmt.Errorf("%s not in %s: %v", name, ova, err)
		}
		if name == "" && strings.HasSuffix(h.Name, ".ovf") || h.Name == name {
			return io.ReadAll(r)
		}
	}
}

func main() {
	raw := flag.String("url", "", "the server's SDK URL with user and password")
	name := flag.String("name", "imported", "name of the new VM")
	flag.Parse()
	ova := flag.Arg(0)
	ctx := context.Background()
	u, err := url.Parse(*raw)
	if err != nil {
		fail("url", err)
	}
	c, err := govmomi.NewClient(ctx, u, true)
	if err != nil {
		fail("login", err)
	}
	finder := find.NewFinder(c.Client, true)
	dc, err := finder.DefaultDatacenter(ctx)
	if err != nil {
		fail("datacenter", err)
	}
	finder.SetDatacenter(dc)
	ds, err := finder.DefaultDatastore(ctx)
	if err != nil {
		fail("datastore", err)
	}
	pools, err := finder.ResourcePoolList(ctx, "*")
	if err != nil || len(pools) == 0 {
		fail("resource pool", err)
	}
	folders, err := dc.Folders(ctx)
	if err != nil {
		fail("folders", err)
	}
	descriptor, err := member(ova, "")
	if err != nil {
		fail("descriptor", err)
	}
	spec, err := ovf.NewManager(c.Client).CreateImportSpec(ctx, string(descriptor), pools[0], ds, types.OvfCreateImportSpecParams{EntityName: *name})
	if err != nil {
		fail("CreateImportSpec", err)
	}
	if spec.Error != nil {
		fail("CreateImportSpec", fmt.Errorf("%s", spec.Error[0].LocalizedMessage))
	}
	lease, err := pools[0].ImportVApp(ctx, spec.ImportSpec, folders.VmFolder, nil)
	if err != nil {
		fail("ImportVApp", err)
	}
	info, err := lease.Wait(ctx, spec.FileItem)
	if err != nil {
		fail("lease", err)
	}
	updater := lease.StartUpdater(ctx, info)
	for _, item := range info.Items {
		data, err := member(ova, path.Base(item.Path))
		if err != nil {
			fail("disk", err)
		}
		if err := lease.Upload(ctx, item, strings.NewReader(string(data)), soap.Upload{ContentLength: int64(len(data))}); err != nil {
			fail("upload", err)
		}
	}
	updater.Done()
	if err := lease.Complete(ctx); err != nil {
		fail("complete", err)
	}
	var vm mo.VirtualMachine
	if err := object.NewVirtualMachine(c.Client, info.Entity).Properties(ctx, info.Entity, []string{"config"}, &vm); err != nil {
		fail("read back", err)
	}
	disks := 0
	for _, d := range vm.Config.Hardware.Device {
		if _, ok := d.(*types.VirtualDisk); ok {
			disks++
		}
	}
	fmt.Printf("imported %s cpus %d memory_mb %d disks %d\n", vm.Config.Name, vm.Config.Hardware.NumCPU, vm.Config.Hardware.MemoryMB, disks)
}
