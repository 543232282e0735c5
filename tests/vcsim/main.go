// vcsim for the tests: govmomi's vSphere API simulator (Debian golang-github-vmware-govmomi-dev)
// with its default VPX model (one datacenter, hosts, datastores and VMs), served on loopback.
// Prints "vms N" (the model's VM count), "datastore NAME DIR" for each datastore, then "listening on HOST:PORT" once it serves (with -tls,
// first "thumbprint HEX" of its certificate and "ca FILE", the CA that signed it, and the address
// is that of a proxy that logs every request on stderr), and runs until SIGTERM or SIGINT.
//
// Build: GO111MODULE=off GOPATH=/usr/share/gocode go build -o vcsim tests/vcsim/main.go
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"flag"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	user := flag.String("user", "user", "the only user name accepted")
	passwordFile := flag.String("password-file", "", "file holding the only password accepted (default: pass)")
	useTLS := flag.Bool("tls", false, "serve HTTPS with a certificate of a CA of its own")
	caOut := flag.String("ca-out", "vcsim-ca.pem", "with -tls: where to write the CA certificate")
	hardware := flag.String("hardware", "", "NAME:CPUS:MEMORY_MB gives that VM of the model other hardware than the default")
	flag.Parse()

	password := "pass"
	if *passwordFile != "" {
		b, err := os.ReadFile(*passwordFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "vcsim:", err)
			os.Exit(1)
		}
		password = strings.TrimRight(string(b), "\r\n")
	}

	model := simulator.VPX()
	if err := model.Create(); err != nil {
		fmt.Fprintln(os.Stderr, "vcsim: creating the model:", err)
		os.Exit(1)
	}
	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*user, password)}
	if *useTLS {
		// Its own certificate: the one httptest falls back to has a 1024-bit RSA key, which
		// rustls (ring) rightly refuses.
		cert, err := selfSigned()
		if err != nil {
			fmt.Fprintln(os.Stderr, "vcsim: making a certificate:", err)
			os.Exit(1)
		}
		model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	if *hardware != "" {
		if err := setHardware(*hardware); err != nil {
			fmt.Fprintln(os.Stderr, "vcsim: -hardware:", err)
			os.Exit(1)
		}
	}
	fmt.Printf("vms %d\n", model.Count().Machine)
	// Where each datastore keeps its files on this host (tests remove one to see the error).
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		fmt.Printf("datastore %s %s\n", ds.Name, ds.Info.GetDatastoreInfo().Url)
	}
	server := model.Service.NewServer()
	if *useTLS {
		// What a client pins or trusts: the certificate's SHA-256, and the certificate itself.
		sum := sha256.Sum256(server.Certificate().Raw)
		fmt.Printf("thumbprint %s\n", hex.EncodeToString(sum[:]))
		if err := os.WriteFile(*caOut, caPEM, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "vcsim: writing the CA certificate:", err)
			os.Exit(1)
		}
		fmt.Printf("ca %s\n", *caOut)
	}
	addr := server.URL.Host
	if *useTLS {
		// Clients talk to a logging proxy in front of the simulator: each request's method, path,
		// requests in flight and Range go to stderr ("request GET /folder/... 2 bytes=0-99").
		addr = logProxy(server.URL.Host, model.Service.TLS)
	}
	fmt.Printf("listening on %s\n", addr)

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, os.Interrupt)
	<-signals
	server.Close()
	model.Remove()
}

// selfSigned makes a CA and an ECDSA P-256 server certificate it signs, for 127.0.0.1 and
// localhost, valid for a day; returns the server's certificate chain and key.
func selfSigned() (tls.Certificate, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	ca := x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "vcsim CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		IsCA:                  true,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, &ca, &ca, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf := x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "vcsim"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost"},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, &leaf, &ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}, nil
}

// caPEM is the CA that signed the server's certificate, once made.
var caPEM []byte

// logProxy serves TLS with config on a free loopback port, logs each request (method, path,
// requests in flight to that path counting it, Range) and passes it to the simulator at target; returns its
// address.
func logProxy(target string, config *tls.Config) string {
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "https", Host: target})
	proxy.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	var mu sync.Mutex
	inflight := map[string]int{}
	logged := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inflight[r.URL.Path]++
		n := inflight[r.URL.Path]
		mu.Unlock()
		defer func() {
			mu.Lock()
			inflight[r.URL.Path]--
			mu.Unlock()
		}()
		fmt.Fprintf(os.Stderr, "request %s %s %d %s\n", r.Method, r.URL.Path, n, r.Header.Get("Range"))
		proxy.ServeHTTP(w, r)
	})
	listener, err := tls.Listen("tcp", "127.0.0.1:0", config)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vcsim: listening for the proxy:", err)
		os.Exit(1)
	}
	go http.Serve(listener, logged)
	return listener.Addr().String()
}

// setHardware sets the CPUs and memory of a VM of the model: "NAME:CPUS:MEMORY_MB".
func setHardware(spec string) error {
	var name string
	var cpus, memory int32
	parts := strings.Split(spec, ":")
	if len(parts) != 3 {
		return fmt.Errorf("%q is not NAME:CPUS:MEMORY_MB", spec)
	}
	name = parts[0]
	if _, err := fmt.Sscan(parts[1], &cpus); err != nil {
		return err
	}
	if _, err := fmt.Sscan(parts[2], &memory); err != nil {
		return err
	}
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		if vm.Name == name {
			vm.Config.Hardware.NumCPU = cpus
			vm.Config.Hardware.MemoryMB = memory
			vm.Summary.Config.NumCpu = cpus
			vm.Summary.Config.MemorySizeMB = memory
			return nil
		}
	}
	return fmt.Errorf("no VM named %q", name)
}
