// Command sarifscan is the example's static check: it looks for hard-coded credentials
// (`password := "..."` and the like) in the Go files of the directories it is given, and writes
// its findings as SARIF 2.1.0 to standard output, for Gantry's `sarif` report.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

var credential = regexp.MustCompile(`(?i)\b(password|passwd|secret|api_?key|token)\w*\s*(:=|=)\s*"[^"]+"`)

type message struct {
	Text string `json:"text"`
}

type result struct {
	RuleID    string     `json:"ruleId"`
	Level     string     `json:"level"`
	Message   message    `json:"message"`
	Locations []location `json:"locations"`
}

type location struct {
	PhysicalLocation struct {
		ArtifactLocation struct {
			URI string `json:"uri"`
		} `json:"artifactLocation"`
		Region struct {
			StartLine int `json:"startLine"`
		} `json:"region"`
	} `json:"physicalLocation"`
}

func scan(path string) ([]result, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []result
	lines := bufio.NewScanner(f)
	for n := 1; lines.Scan(); n++ {
		if strings.HasPrefix(strings.TrimSpace(lines.Text()), "//") || !credential.MatchString(lines.Text()) {
			continue
		}
		r := result{RuleID: "G101", Level: "error", Message: message{"hard-coded credential"}}
		var loc location
		loc.PhysicalLocation.ArtifactLocation.URI = filepath.ToSlash(path)
		loc.PhysicalLocation.Region.StartLine = n
		r.Locations = []location{loc}
		out = append(out, r)
	}
	return out, lines.Err()
}

func main() {
	results := []result{}
	for _, dir := range os.Args[1:] {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		for _, f := range files {
			found, err := scan(f)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			results = append(results, found...)
		}
	}
	log := map[string]interface{}{
		"version": "2.1.0",
		"runs": []interface{}{map[string]interface{}{
			"tool":    map[string]interface{}{"driver": map[string]interface{}{"name": "sarifscan"}},
			"results": results,
		}},
	}
	if err := json.NewEncoder(os.Stdout).Encode(log); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
}
