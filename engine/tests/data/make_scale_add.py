"""Writes scale_add.onnx, the small graph the runtime test runs: y = (a + b) * 2.

Run with any Python that has `onnx`: python3 make_scale_add.py
"""
import onnx
from onnx import TensorProto, helper

a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n"])
b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n"])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
graph = helper.make_graph(
    [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["sum", "two"], ["y"])],
    "scale_add",
    [a, b],
    [y],
    initializer=[two],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="musicgen-live tests")
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, "scale_add.onnx")
