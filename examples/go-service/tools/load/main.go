// Command load is the failure drill's traffic: it sends GET PATH at -rate requests a second, the
// share -weight (a percentage) of them to -canary and the rest to -stable, spread evenly, until
// it is stopped. With -wait URL it only waits (up to -timeout) until URL answers 200, and
// prints the answer: how a deploy knows that the service it started listens.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"
)

func main() {
	stable := flag.String("stable", "", "the stable track's base URL")
	canary := flag.String("canary", "", "the canary track's base URL")
	weight := flag.Int("weight", 0, "the percentage of requests sent to the canary")
	rate := flag.Int("rate", 50, "requests a second")
	path := flag.String("path", "/sum?a=1&b=2", "the path requested")
	wait := flag.String("wait", "", "only wait until this URL answers 200")
	timeout := flag.Duration("timeout", 10*time.Second, "how long -wait waits")
	flag.Parse()
	client := &http.Client{Timeout: 2 * time.Second}
	if *wait != "" {
		body, err := waitFor(client, *wait, *timeout)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Print(body)
		return
	}
	if *stable == "" || *weight < 0 || *weight > 100 || *rate < 1 {
		fmt.Fprintln(os.Stderr, "usage: load -stable URL [-canary URL -weight 0..100] [-rate N]")
		os.Exit(2)
	}
	tick := time.NewTicker(time.Second / time.Duration(*rate))
	for n := 1; ; n++ {
		<-tick.C
		base := *stable
		if n*(*weight)/100 > (n-1)*(*weight)/100 {
			base = *canary
		}
		go send(client, base+*path)
	}
}

func send(client *http.Client, url string) {
	resp, err := client.Get(url)
	if err != nil {
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

func waitFor(client *http.Client, url string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return string(body), nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%s did not answer 200 in %s: %v", url, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
