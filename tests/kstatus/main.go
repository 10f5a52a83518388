// kstatus reads Kubernetes objects (a JSON array on stdin) and prints, one JSON
// line each, the status sigs.k8s.io/cli-utils/pkg/kstatus computes for it: the
// rules Flux health checks and `kubectl wait`-style tooling apply.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kjson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

func main() {
	var objects []map[string]interface{}
	data, err := io.ReadAll(os.Stdin)
	if err == nil {
		err = kjson.Unmarshal(data, &objects) // integers as int64, as unstructured wants
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: stdin is not a JSON array of objects: %v\n", err)
		os.Exit(2)
	}
	out := json.NewEncoder(os.Stdout)
	for _, obj := range objects {
		result, err := status.Compute(&unstructured.Unstructured{Object: obj})
		if err != nil {
			fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
			os.Exit(1)
		}
		_ = out.Encode(map[string]string{"status": result.Status.String(), "message": result.Message})
	}
}
