"""The torch.fx rewrites behind DeepLIFT: a functional copy of the model (one out-of-place op per
call site, no in-place ops), and on it every nonlinear call site replaced by a rule site
(:mod:`deeplift_rules`). Every other op that the input flows through must be linear (its
gradient is then its DeepLIFT multiplier); anything else is refused by name, never explained
wrongly.
"""

from __future__ import annotations

import copy
import functools
import operator

from ..errors import PathvizError

_INPLACE_FUNCTIONS = {
    operator.iadd: operator.add,
    operator.isub: operator.sub,
    operator.imul: operator.mul,
    operator.itruediv: operator.truediv,
}
ADVICE = "use -mth gradient"
_TENSOR_FACTS = ("shape", "dtype", "device", "ndim")  # attributes that carry no values


def _transformer_layer(model) -> str | None:
    """The first transformer layer of ``model`` that DeepLIFT has no rule for, described."""
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, (nn.LayerNorm, nn.MultiheadAttention)):
            return f"layer {name!r} ({type(module).__name__})"
    return None


def functional_copy(model):
    """A torch.fx copy of ``model`` in eval mode, with one out-of-place module per call site of
    every module that has an ``inplace`` switch (ReLU and the other activations, Dropout) and no
    in-place arithmetic or in-place tensor methods. A replaced site's node keeps the original
    module's name in ``node.meta["pathviz_source"]``."""
    from torch import fx

    try:
        graph_module = fx.symbolic_trace(copy.deepcopy(model).eval())
    except Exception as exc:
        traced = f"the model cannot be traced by torch.fx ({type(exc).__name__}: {exc})"
        layer = _transformer_layer(model)
        if layer is not None:  # the reason that matters to the user, named first
            raise PathvizError(
                f"DeepLIFT: {layer} has no DeepLIFT rule, and {traced}; {ADVICE}"
            ) from exc
        raise PathvizError(
            f"DeepLIFT: the model cannot be traced by torch.fx to rewrite its "
            f"in-place operations ({type(exc).__name__}: {exc})"
        ) from exc
    count = 0
    for node in list(graph_module.graph.nodes):
        if node.op == "call_module":
            module = graph_module.get_submodule(node.target)
            if hasattr(module, "inplace"):
                _own_module_per_site(graph_module, node, module, count)
                count += 1
        elif node.op == "call_function":
            _out_of_place_function(node)
        elif node.op == "call_method" and _is_inplace_method(node.target):
            node.target = node.target[:-1]
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()  # the shared in-place modules are gone
    graph_module.recompile()
    return graph_module.eval()


def _own_module_per_site(graph_module, node, module, count: int) -> None:
    own = copy.deepcopy(module)
    own.inplace = False
    name = f"_deeplift_{type(module).__name__.lower()}_{count}"
    graph_module.add_submodule(name, own)
    with graph_module.graph.inserting_after(node):
        replacement = graph_module.graph.call_module(name, node.args, node.kwargs)
    replacement.meta = {**node.meta, "pathviz_source": node.target}
    node.replace_all_uses_with(replacement)
    graph_module.graph.erase_node(node)


def _out_of_place_function(node) -> None:
    import torch
    import torch.nn.functional as F

    if node.target in _INPLACE_FUNCTIONS:
        node.target = _INPLACE_FUNCTIONS[node.target]
        return
    name = getattr(node.target, "__name__", "")
    if name.endswith("_") and not name.startswith("_"):
        for namespace in (F, torch):
            plain = getattr(namespace, name[:-1], None)
            if getattr(namespace, name, None) is node.target and callable(plain):
                node.target = plain
                break
    if node.kwargs.get("inplace"):
        node.kwargs = {**node.kwargs, "inplace": False}


def _is_inplace_method(name) -> bool:
    return isinstance(name, str) and name.endswith("_") and not name.startswith("_")


# -- rules by op ---------------------------------------------------------------------------------
@functools.cache
def _tables() -> dict:
    import torch
    import torch.nn.functional as F
    from torch import nn

    def types(*names):
        names = [n for group in names for n in group.split()]
        return tuple(getattr(nn, n) for n in names if hasattr(nn, n))

    def functions(namespace, *names):
        return {getattr(namespace, n) for n in names if hasattr(namespace, n)}

    elementwise_names = _words(
        "relu relu6 leaky_relu prelu rrelu elu selu celu gelu silu mish sigmoid tanh softplus "
        "hardtanh hardsigmoid hardswish logsigmoid softsign tanhshrink softshrink hardshrink "
        "threshold clamp clip clamp_min clamp_max"
    )
    product_names = _words("mul multiply div divide true_divide matmul mm bmm")
    linear_names = _words(
        "add sub subtract neg negative cat concat concatenate stack flatten reshape squeeze "
        "unsqueeze permute transpose swapaxes movedim t mean sum chunk split narrow select flip "
        "roll clone conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d "
        "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d "
        "adaptive_avg_pool3d linear pad interpolate upsample pixel_shuffle pixel_unshuffle "
        "zeros_like ones_like dropout dropout1d dropout2d dropout3d alpha_dropout batch_norm "
        "contiguous"
    )
    pools = {}
    for d in (1, 2, 3):
        pools[getattr(F, f"max_pool{d}d")] = getattr(F, f"max_pool{d}d_with_indices")
        pools[getattr(F, f"max_pool{d}d_with_indices")] = getattr(F, f"max_pool{d}d_with_indices")
        pools[getattr(F, f"adaptive_max_pool{d}d")] = getattr(
            F, f"adaptive_max_pool{d}d_with_indices"
        )
    return {
        "elementwise_modules": types(
            "ReLU ReLU6 LeakyReLU PReLU RReLU ELU SELU CELU GELU SiLU Mish Sigmoid Tanh "
            "Softplus Hardtanh Hardsigmoid Hardswish LogSigmoid Softsign Tanhshrink Softshrink "
            "Hardshrink Threshold"
        ),
        "max_modules": types(
            "MaxPool1d MaxPool2d MaxPool3d AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d"
        ),
        "linear_modules": types(
            "Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d Linear "
            "Identity Flatten Unflatten Dropout Dropout1d Dropout2d Dropout3d AlphaDropout "
            "FeatureAlphaDropout AvgPool1d AvgPool2d AvgPool3d AdaptiveAvgPool1d "
            "AdaptiveAvgPool2d AdaptiveAvgPool3d ZeroPad1d ZeroPad2d ZeroPad3d ConstantPad1d "
            "ConstantPad2d ConstantPad3d ReflectionPad1d ReflectionPad2d ReflectionPad3d "
            "ReplicationPad1d ReplicationPad2d ReplicationPad3d CircularPad1d CircularPad2d "
            "CircularPad3d Upsample UpsamplingNearest2d UpsamplingBilinear2d PixelShuffle "
            "PixelUnshuffle ChannelShuffle"
        ),
        "batch_norms": types("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"),
        "elementwise_functions": functions(F, *elementwise_names)
        | functions(torch, *elementwise_names),
        "max_functions": pools,
        "product_functions": functions(torch, *product_names)
        | {operator.mul, operator.truediv, operator.matmul},
        "linear_functions": functions(torch, *linear_names)
        | functions(F, *linear_names)
        | {operator.add, operator.sub, operator.neg, operator.pos, operator.getitem},
        "elementwise_methods": set(elementwise_names),
        "product_methods": {"mul", "div", "matmul", "__mul__", "__truediv__"},
        "linear_methods": set(
            _words(
                "view view_as reshape reshape_as flatten unflatten permute transpose t "
                "contiguous squeeze unsqueeze mean sum add sub neg size dim expand expand_as "
                "repeat chunk split clone to float double half type_as narrow select flip roll "
                "movedim swapaxes numel"
            )
        ),
    }


def _words(text: str) -> list[str]:
    return text.split()


def passes_through(function) -> None:
    """Declares a function of the model (a torch.fx leaf, see ``torch.fx.wrap``) linear in its
    first argument, e.g. a check that returns its input: DeepLIFT then passes gradients
    through it instead of refusing the model."""
    _USER_LINEAR.add(function)


_USER_LINEAR: set = set()


def rule_copy(model):
    """(rewritten model, its :class:`~deeplift_rules.Pairs` state): the functional copy with a
    rule site at every nonlinear call site. Raises PathvizError naming the first op that the
    input flows through and that has no DeepLIFT rule."""
    from .deeplift_rules import Pairs, RuleSite

    graph_module = functional_copy(model)
    pairs = Pairs()
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    tensors = set(placeholders[:1])  # the nodes whose tensor values depend on the input
    count = 0
    for node in list(graph_module.graph.nodes):
        if node.op in ("placeholder", "get_attr", "output"):
            continue
        if not any(a in tensors for a in node.all_input_nodes):
            continue
        rule = _rule_of(graph_module, node, tensors)
        if rule == "shape":  # sizes and dims: no values flow on from here
            continue
        tensors.add(node)
        if rule is None:
            continue
        kind, op = rule
        name = f"_deeplift_rule_{count}"
        count += 1
        graph_module.add_submodule(name, RuleSite(pairs, kind, op, _describe(graph_module, node)))
        with graph_module.graph.inserting_after(node):
            site = graph_module.graph.call_module(name, node.args, node.kwargs)
        site.meta = dict(node.meta)
        node.replace_all_uses_with(site)
        graph_module.graph.erase_node(node)
        tensors.add(site)
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module.eval(), pairs


def _rule_of(graph_module, node, tensors):
    """None (linear: gradients pass), "shape" (a size, not a tensor), or (kind, op) for a
    rule site; raises for an op without a rule."""
    tables = _tables()
    dependent = [a for a in node.all_input_nodes if a in tensors]
    first = node.args[0] if node.args else None
    if node.op == "call_module":
        return _module_rule(graph_module.get_submodule(node.target), graph_module, node)
    if node.op == "call_method":
        name = node.target
        if name in ("size", "dim", "numel"):
            return "shape"
        if name in tables["linear_methods"]:
            return None
        if name in tables["product_methods"]:
            return _product(node, dependent, graph_module)
        if name in tables["elementwise_methods"] and dependent == [first]:
            return "elementwise", functools.partial(_call_method, name)
        _refuse(graph_module, node)
    target = node.target
    if target is len or (target is getattr and node.args[1] in _TENSOR_FACTS):
        return "shape"
    if target in tables["linear_functions"] or target in _USER_LINEAR:
        _check_eval_mode(graph_module, node)
        return None
    if target in tables["product_functions"]:
        return _product(node, dependent, graph_module)
    if target in tables["elementwise_functions"] and dependent == [first]:
        return "elementwise", functools.partial(_call_out_of_place, target)
    if target in tables["max_functions"] and dependent == [first]:
        index_at = 2 if "adaptive" in getattr(target, "__name__", "") else 6
        if node.kwargs.get("return_indices") or (len(node.args) > index_at and node.args[index_at]):
            _refuse(graph_module, node, "returns its argmax indices")
        return "max", functools.partial(_call_pool, tables["max_functions"][target])
    _refuse(graph_module, node)


def _module_rule(module, graph_module, node):
    import torch.nn.functional as F

    tables = _tables()
    if isinstance(module, tables["linear_modules"]):
        return None
    if isinstance(module, tables["batch_norms"]):
        if module.running_mean is None or not module.track_running_stats:
            _refuse(graph_module, node, "uses batch statistics in eval mode")
        return None
    if isinstance(module, tables["elementwise_modules"]):
        return "elementwise", module
    if isinstance(module, tables["max_modules"]):
        if module.return_indices:
            _refuse(graph_module, node, "returns its argmax indices")
        d = type(module).__name__[-2]
        if type(module).__name__.startswith("Adaptive"):
            pool = getattr(F, f"adaptive_max_pool{d}d_with_indices")
            return "max", lambda t, pool=pool, m=module: pool(t, m.output_size)
        pool = getattr(F, f"max_pool{d}d_with_indices")
        return "max", lambda t, pool=pool, m=module: pool(
            t, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode
        )
    _refuse(graph_module, node)


def _product(node, dependent, graph_module):
    """A product is linear when one factor is a constant (and a quotient when only the
    numerator depends on the input)."""
    divisor = node.args[1] if len(node.args) > 1 else None
    is_division = node.target in ("div", "__truediv__") or getattr(node.target, "__name__", "") in (
        "truediv",
        "div",
        "divide",
        "true_divide",
    )
    if len(dependent) > 1 or (is_division and divisor in dependent):
        _refuse(graph_module, node, "multiplies or divides two activations")
    return None


def _check_eval_mode(graph_module, node) -> None:
    """Functional dropout and batch norm are linear only when not in training mode."""
    name = getattr(node.target, "__name__", "")
    if "dropout" in name:
        training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
    elif name == "batch_norm":
        training = node.kwargs.get("training", node.args[5] if len(node.args) > 5 else False)
    else:
        return
    if training:
        _refuse(graph_module, node, "runs in training mode")


def _call_method(name, t, *args, **kwargs):
    return getattr(t, name)(*args, **kwargs)


def _call_out_of_place(function, t, *args, **kwargs):
    if "inplace" in kwargs:
        kwargs = {**kwargs, "inplace": False}
    return function(t, *args, **kwargs)


def _call_pool(with_indices, t, *args, **kwargs):
    kwargs = {k: v for k, v in kwargs.items() if k != "return_indices"}
    return with_indices(t, *args, **kwargs)


def _describe(graph_module, node) -> str:
    """The layer or op of a node as the user knows it."""
    if node.op == "call_module":
        source = node.meta.get("pathviz_source", node.target)
        return f"layer '{source}' ({type(graph_module.get_submodule(node.target)).__name__})"
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "?")
    stack = node.meta.get("nn_module_stack") or {}
    where = f" in '{next(reversed(stack.values()))[0]}'" if stack else ""
    return f"operation '{name}'{where} (graph node '{node.name}')"


def _refuse(graph_module, node, why: str = "has no DeepLIFT rule") -> None:
    raise PathvizError(f"DeepLIFT: {_describe(graph_module, node)} {why}; {ADVICE}")
