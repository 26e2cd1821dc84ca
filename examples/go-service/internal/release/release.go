// Package release is what the service needs to be deployed and verified: its version and an
// injected fault rate (for the failure drill), `/healthz` answering the version, and Prometheus
// metrics in the text format at `/metrics`: `http_requests_total{code}` and the
// `http_request_duration_seconds` histogram, over every other request.
package release

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"
)

// Buckets are the upper bounds, in seconds, of the latency histogram's buckets.
var Buckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}

// Config is what a deployment sets at start.
type Config struct {
	// Version is what /healthz answers.
	Version string
	// FaultRate is the share of requests answered 500, from 0 to 1.
	FaultRate float64
}

// FromEnv reads VERSION (default "dev") and FAULT_RATE (default 0) through getenv.
func FromEnv(getenv func(string) string) (Config, error) {
	c := Config{Version: getenv("VERSION"), FaultRate: 0}
	if c.Version == "" {
		c.Version = "dev"
	}
	if s := getenv("FAULT_RATE"); s != "" {
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || f < 0 || f > 1 {
			return c, fmt.Errorf("FAULT_RATE %q: want a number from 0 to 1", s)
		}
		c.FaultRate = f
	}
	return c, nil
}

// Metrics counts requests by status code and their durations.
type Metrics struct {
	mu      sync.Mutex
	codes   map[int]uint64
	buckets []uint64
	count   uint64
	sum     float64
}

// NewMetrics is an empty set of metrics.
func NewMetrics() *Metrics {
	return &Metrics{codes: map[int]uint64{}, buckets: make([]uint64, len(Buckets))}
}

// Observe records one request answered with code after d.
func (m *Metrics) Observe(code int, d time.Duration) {
	s := d.Seconds()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.codes[code]++
	for i, le := range Buckets {
		if s <= le {
			m.buckets[i]++
		}
	}
	m.count++
	m.sum += s
}

// Write writes the metrics in Prometheus' text format.
func (m *Metrics) Write(w io.Writer) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	codes := make([]int, 0, len(m.codes))
	for c := range m.codes {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	out := "# HELP http_requests_total Requests answered, by status code.\n" +
		"# TYPE http_requests_total counter\n"
	for _, c := range codes {
		out += fmt.Sprintf("http_requests_total{code=\"%d\"} %d\n", c, m.codes[c])
	}
	out += "# HELP http_request_duration_seconds How long requests took.\n" +
		"# TYPE http_request_duration_seconds histogram\n"
	for i, le := range Buckets {
		out += fmt.Sprintf("http_request_duration_seconds_bucket{le=\"%g\"} %d\n", le, m.buckets[i])
	}
	out += fmt.Sprintf("http_request_duration_seconds_bucket{le=\"+Inf\"} %d\n", m.count)
	out += fmt.Sprintf("http_request_duration_seconds_sum %g\n", m.sum)
	out += fmt.Sprintf("http_request_duration_seconds_count %d\n", m.count)
	_, err := io.WriteString(w, out)
	return err
}

// Fault decides which requests fail: exactly the share rate of them, spread evenly.
type Fault struct {
	mu   sync.Mutex
	rate float64
	n    uint64
}

// NewFault fails the share rate of requests.
func NewFault(rate float64) *Fault {
	return &Fault{rate: rate}
}

// Next tells whether the next request fails.
func (f *Fault) Next() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	return uint64(float64(f.n)*f.rate) > uint64(float64(f.n-1)*f.rate)
}

type recorder struct {
	http.ResponseWriter
	code int
}

func (r *recorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

// Wrap serves /healthz ("ok VERSION") and /metrics itself, and app for every other request,
// measured, failing the configured share of them with 500.
func Wrap(app http.Handler, c Config, m *Metrics) http.Handler {
	fault := NewFault(c.FaultRate)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "ok %s\n", c.Version)
	})
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		if err := m.Write(w); err != nil {
			log.Printf("writing the metrics: %v", err)
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w, code: http.StatusOK}
		if fault.Next() {
			http.Error(rec, "injected fault", http.StatusInternalServerError)
		} else {
			app.ServeHTTP(rec, r)
		}
		m.Observe(rec.code, time.Since(start))
	})
	return mux
}

// Listen listens on addr, retrying for up to wait while the address is still taken (by the
// process a deploy has just stopped).
func Listen(addr string, wait time.Duration) (net.Listener, error) {
	deadline := time.Now().Add(wait)
	for {
		l, err := net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			return l, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Serve serves app wrapped by Wrap on addr, configured by getenv (see FromEnv).
func Serve(addr string, getenv func(string) string, app http.Handler) error {
	c, err := FromEnv(getenv)
	if err != nil {
		return err
	}
	l, err := Listen(addr, 5*time.Second)
	if err != nil {
		return err
	}
	log.Printf("version %s listening on %s (fault rate %g)", c.Version, l.Addr(), c.FaultRate)
	return http.Serve(l, Wrap(app, c, NewMetrics()))
}
